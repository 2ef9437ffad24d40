use super::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

enum Want {
    Line(ParsedLine<'static>),
    Err(&'static str),
}

fn ok(
    measurement: &'static str,
    tags: &[(&'static str, &'static str)],
    fields: &[(&'static str, FieldValue<'static>)],
    timestamp: Option<i64>,
) -> Want {
    Want::Line(ParsedLine {
        measurement: Cow::Borrowed(measurement),
        tags: tags.iter().map(|&(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v))).collect(),
        fields: fields.iter().map(|(k, v)| (Cow::Borrowed(*k), v.clone())).collect(),
        timestamp,
    })
}

/// Measurement `m`, no tags, one field `v`, no timestamp.
fn mv(value: FieldValue<'static>) -> Want {
    ok("m", &[], &[("v", value)], None)
}

/// Measurement `m`, field `v=1` (float), the given timestamp.
fn ts(timestamp: i64) -> Want {
    ok("m", &[], &[("v", fl(1.0))], Some(timestamp))
}

fn err(substring: &'static str) -> Want {
    Want::Err(substring)
}

fn fl(v: f64) -> FieldValue<'static> {
    FieldValue::F64(v)
}

fn int(v: i64) -> FieldValue<'static> {
    FieldValue::I64(v)
}

fn uint(v: u64) -> FieldValue<'static> {
    FieldValue::U64(v)
}

fn bool_(v: bool) -> FieldValue<'static> {
    FieldValue::Bool(v)
}

fn s(v: &'static str) -> FieldValue<'static> {
    FieldValue::Str(Cow::Borrowed(v))
}

// ---------------------------------------------------------------------------
// Table of edge cases
// ---------------------------------------------------------------------------

fn cases() -> Vec<(&'static str, Want)> {
    vec![
        // --- basics -------------------------------------------------------
        ("cpu value=1", ok("cpu", &[], &[("value", fl(1.0))], None)),
        ("cpu value=1 1465839830100400200", ok("cpu", &[], &[("value", fl(1.0))], Some(1465839830100400200))),
        ("cpu,host=a value=1", ok("cpu", &[("host", "a")], &[("value", fl(1.0))], None)),
        (
            "cpu,host=a,region=west usage=64.2,idle=30i 1590488773254420000",
            ok(
                "cpu",
                &[("host", "a"), ("region", "west")],
                &[("usage", fl(64.2)), ("idle", int(30))],
                Some(1590488773254420000),
            ),
        ),
        ("cpu,b=2,a=1 v=1", ok("cpu", &[("b", "2"), ("a", "1")], &[("v", fl(1.0))], None)),
        (
            r#"cpu v=1,w=2i,x=3u,y=true,z="s""#,
            ok("cpu", &[], &[("v", fl(1.0)), ("w", int(2)), ("x", uint(3)), ("y", bool_(true)), ("z", s("s"))], None),
        ),
        ("cpu,v=a v=1", ok("cpu", &[("v", "a")], &[("v", fl(1.0))], None)),
        (
            "#cpu v=1",
            ok("#cpu", &[], &[("v", fl(1.0))], None), // comments are a parse_lines concept
        ),
        // --- whitespace ---------------------------------------------------
        ("  cpu v=1", ok("cpu", &[], &[("v", fl(1.0))], None)),
        ("\t cpu v=1", ok("cpu", &[], &[("v", fl(1.0))], None)),
        ("cpu   v=1", ok("cpu", &[], &[("v", fl(1.0))], None)),
        ("cpu v=1    5", ok("cpu", &[], &[("v", fl(1.0))], Some(5))),
        ("cpu v=1 ", ok("cpu", &[], &[("v", fl(1.0))], None)),
        ("cpu v=1 123   ", ok("cpu", &[], &[("v", fl(1.0))], Some(123))),
        ("cpu,a=b   v=1", ok("cpu", &[("a", "b")], &[("v", fl(1.0))], None)),
        ("cpu\tv=1", err(r"invalid character '\t' in measurement name")),
        ("cpu v=1\t123", err(r#"invalid field value "1\t123" for field "v""#)),
        ("cpu v=1 123\t", err("invalid timestamp")),
        ("", err("empty line")),
        ("   ", err("empty line")),
        ("cpu v=1\r", err("invalid field value")),
        ("cpu v=1\ncpu v=2", err("invalid field value")),
        // --- measurement escapes -------------------------------------------
        (r"c\,pu v=1", ok("c,pu", &[], &[("v", fl(1.0))], None)),
        (r"c\ pu v=1", ok("c pu", &[], &[("v", fl(1.0))], None)),
        (r"c\=pu v=1", ok(r"c\=pu", &[], &[("v", fl(1.0))], None)),
        ("c=pu v=1", ok("c=pu", &[], &[("v", fl(1.0))], None)),
        (r"c\\pu v=1", ok(r"c\pu", &[], &[("v", fl(1.0))], None)),
        (r"c\\\\pu v=1", ok(r"c\\pu", &[], &[("v", fl(1.0))], None)),
        (r"c\xpu v=1", ok(r"c\xpu", &[], &[("v", fl(1.0))], None)),
        (r"cpu\\ v=1", ok(r"cpu\", &[], &[("v", fl(1.0))], None)),
        (r"c\\\ pu v=1", ok(r"c\ pu", &[], &[("v", fl(1.0))], None)),
        (r"\ cpu v=1", ok(" cpu", &[], &[("v", fl(1.0))], None)),
        (r"c\\,a=b v=1", ok(r"c\", &[("a", "b")], &[("v", fl(1.0))], None)),
        (r#"c"pu" v=1"#, ok(r#"c"pu""#, &[], &[("v", fl(1.0))], None)),
        (r"cpu\é v=1", ok(r"cpu\é", &[], &[("v", fl(1.0))], None)),
        ("温度 値=1", ok("温度", &[], &[("値", fl(1.0))], None)),
        ("🙂,🔑=🔒 📈=1i", ok("🙂", &[("🔑", "🔒")], &[("📈", int(1))], None)),
        (r"cpu\ v=1", err("missing fields")),
        (r"cpu\", err("missing fields")),
        (",a=b v=1", err("empty measurement name")),
        (" ,a=b v=1", err("empty measurement name")),
        (" v=1", err("missing fields")),
        ("cpu\0 v=1", err(r"invalid character '\0' in measurement name")),
        // --- tag escapes ----------------------------------------------------
        (r"cpu,ho\,st=a v=1", ok("cpu", &[("ho,st", "a")], &[("v", fl(1.0))], None)),
        (r"cpu,ho\=st=a v=1", ok("cpu", &[("ho=st", "a")], &[("v", fl(1.0))], None)),
        (r"cpu,ho\ st=a v=1", ok("cpu", &[("ho st", "a")], &[("v", fl(1.0))], None)),
        (r"cpu,ho\\st=a v=1", ok("cpu", &[(r"ho\st", "a")], &[("v", fl(1.0))], None)),
        (r"cpu,ho\xst=a v=1", ok("cpu", &[(r"ho\xst", "a")], &[("v", fl(1.0))], None)),
        (r"cpu,host=a\,b v=1", ok("cpu", &[("host", "a,b")], &[("v", fl(1.0))], None)),
        (r"cpu,host=a\=b v=1", ok("cpu", &[("host", "a=b")], &[("v", fl(1.0))], None)),
        (r"cpu,host=a\ b v=1", ok("cpu", &[("host", "a b")], &[("v", fl(1.0))], None)),
        ("cpu,host=a=b v=1", ok("cpu", &[("host", "a=b")], &[("v", fl(1.0))], None)),
        (r"cpu,host=a\\ v=1", ok("cpu", &[("host", r"a\")], &[("v", fl(1.0))], None)),
        (r"cpu,host=a\xb v=1", ok("cpu", &[("host", r"a\xb")], &[("v", fl(1.0))], None)),
        (r"cpu,host=\\ v=1", ok("cpu", &[("host", r"\")], &[("v", fl(1.0))], None)),
        (r#"cpu,#k="v" v=1"#, ok("cpu", &[("#k", r#""v""#)], &[("v", fl(1.0))], None)),
        ("cpu,地点=東京 v=1", ok("cpu", &[("地点", "東京")], &[("v", fl(1.0))], None)),
        (r"cpu,host=a\ v=1", err("missing fields")),
        (r#"cpu,host="a b" v=1"#, err(r#"missing field value for field "b\"""#)),
        // --- tag errors -----------------------------------------------------
        ("cpu,host v=1", err(r#"missing tag value for tag "host""#)),
        ("cpu,host= v=1", err(r#"missing tag value for tag "host""#)),
        ("cpu,host=,a=b v=1", err(r#"missing tag value for tag "host""#)),
        ("cpu,host=", err(r#"missing tag value for tag "host""#)),
        ("cpu,a,b=c v=1", err(r#"missing tag value for tag "a""#)),
        ("cpu,=a v=1", err("empty tag key")),
        ("cpu, v=1", err("empty tag key")),
        ("cpu,a=b, v=1", err("empty tag key")),
        ("cpu,,a=b v=1", err("empty tag key")),
        ("cpu,", err("empty tag key")),
        ("cpu,a=b", err("missing fields")),
        ("cpu,a=b   ", err("missing fields")),
        ("cpu,host=a,host=b v=1", err(r#"duplicate tag key "host""#)),
        (r"cpu,h\ x=a,h\ x=b v=1", err(r#"duplicate tag key "h x""#)),
        ("cpu,a\tb=c v=1", err(r"invalid character '\t' in tag key")),
        ("cpu,a=b\tc v=1", err(r"invalid character '\t' in tag value")),
        // --- field keys -----------------------------------------------------
        (r"cpu fi\,eld=1", ok("cpu", &[], &[("fi,eld", fl(1.0))], None)),
        (r"cpu fi\=eld=1", ok("cpu", &[], &[("fi=eld", fl(1.0))], None)),
        (r"cpu fi\ eld=1", ok("cpu", &[], &[("fi eld", fl(1.0))], None)),
        (r"cpu fi\\eld=1", ok("cpu", &[], &[(r"fi\eld", fl(1.0))], None)),
        (r"cpu fi\xeld=1", ok("cpu", &[], &[(r"fi\xeld", fl(1.0))], None)),
        (r"cpu field\\=1", ok("cpu", &[], &[(r"field\", fl(1.0))], None)),
        (r#"cpu fi"eld=1"#, ok("cpu", &[], &[(r#"fi"eld"#, fl(1.0))], None)),
        ("cpu 値=1", ok("cpu", &[], &[("値", fl(1.0))], None)),
        ("cpu a\tb=1", err(r"invalid character '\t' in field key")),
        ("cpu =1", err("empty field key")),
        ("cpu v=1,=2", err("empty field key")),
        ("cpu v=1,", err("empty field key")),
        ("cpu v=1,,w=2", err("empty field key")),
        ("cpu v=1, w=2", err("empty field key")),
        ("cpu v", err(r#"missing field value for field "v""#)),
        ("cpu v=", err(r#"missing field value for field "v""#)),
        ("cpu v= 1", err(r#"missing field value for field "v""#)),
        ("cpu v=,w=1", err(r#"missing field value for field "v""#)),
        ("cpu v 1", err(r#"missing field value for field "v""#)),
        ("cpu a,b=1", err(r#"missing field value for field "a""#)),
        ("cpu", err("missing fields")),
        ("cpu ", err("missing fields")),
        // --- floats ---------------------------------------------------------
        ("m v=1.0", mv(fl(1.0))),
        ("m v=-1.5", mv(fl(-1.5))),
        ("m v=0", mv(fl(0.0))),
        ("m v=-0.0", mv(fl(-0.0))),
        ("m v=1e10", mv(fl(1e10))),
        ("m v=1E10", mv(fl(1e10))),
        ("m v=1.5E-3", mv(fl(1.5e-3))),
        ("m v=1.5e+3", mv(fl(1500.0))),
        ("m v=-2e-2", mv(fl(-0.02))),
        ("m v=1e-0", mv(fl(1.0))),
        ("m v=007.5", mv(fl(7.5))),
        ("m v=1.7976931348623157e308", mv(fl(f64::MAX))),
        ("m v=-1.7976931348623157e308", mv(fl(f64::MIN))),
        ("m v=5e-324", mv(fl(5e-324))),
        ("m v=1e-400", mv(fl(0.0))),
        ("m v=9223372036854775808", mv(fl(9223372036854775808.0))),
        ("m v=1e309", err(r#"float value out of range for field "v""#)),
        ("m v=-1e309", err("float value out of range")),
        ("m v=+1.0", err(r#"invalid field value "+1.0" for field "v""#)),
        ("m v=.5", err("invalid field value")),
        ("m v=1.", err("invalid field value")),
        ("m v=1.e5", err("invalid field value")),
        ("m v=1e", err("invalid field value")),
        ("m v=1e+", err("invalid field value")),
        ("m v=1.2.3", err("invalid field value")),
        ("m v=1.5e3.0", err("invalid field value")),
        ("m v=NaN", err(r#"invalid field value "NaN""#)),
        ("m v=nan", err("invalid field value")),
        ("m v=inf", err("invalid field value")),
        ("m v=-inf", err("invalid field value")),
        ("m v=Infinity", err("invalid field value")),
        ("m v=0x10", err("invalid field value")),
        ("m v=1_000", err("invalid field value")),
        ("m v=-", err("invalid field value")),
        ("m v=--1", err("invalid field value")),
        ("m usage=12x", err(r#"invalid field value "12x" for field "usage""#)),
        // --- signed integers ------------------------------------------------
        ("m v=12i", mv(int(12))),
        ("m v=-12i", mv(int(-12))),
        ("m v=0i", mv(int(0))),
        ("m v=-0i", mv(int(0))),
        ("m v=00012i", mv(int(12))),
        ("m v=9223372036854775807i", mv(int(i64::MAX))),
        ("m v=-9223372036854775808i", mv(int(i64::MIN))),
        ("m v=9223372036854775808i", err(r#"integer value out of range for field "v""#)),
        ("m v=-9223372036854775809i", err("integer value out of range")),
        ("m v=99999999999999999999999i", err("integer value out of range")),
        ("m v=99999999999999999999999xi", err("invalid field value")),
        ("m v=+12i", err("invalid field value")),
        ("m v=12.0i", err("invalid field value")),
        ("m v=1e3i", err("invalid field value")),
        ("m v=i", err(r#"invalid field value "i""#)),
        ("m v=-i", err("invalid field value")),
        ("m v=12I", err("invalid field value")),
        ("m v=12ii", err("invalid field value")),
        ("m v=1 2i", err("invalid timestamp")),
        // --- unsigned integers ----------------------------------------------
        ("m v=12u", mv(uint(12))),
        ("m v=0u", mv(uint(0))),
        ("m v=18446744073709551615u", mv(uint(u64::MAX))),
        ("m v=18446744073709551616u", err(r#"unsigned integer value out of range for field "v""#)),
        ("m v=-1u", err(r#"invalid field value "-1u""#)),
        ("m v=+1u", err("invalid field value")),
        ("m v=u", err("invalid field value")),
        ("m v=1.0u", err("invalid field value")),
        ("m v=12U", err("invalid field value")),
        // --- booleans -------------------------------------------------------
        ("m v=t", mv(bool_(true))),
        ("m v=T", mv(bool_(true))),
        ("m v=true", mv(bool_(true))),
        ("m v=True", mv(bool_(true))),
        ("m v=TRUE", mv(bool_(true))),
        ("m v=f", mv(bool_(false))),
        ("m v=F", mv(bool_(false))),
        ("m v=false", mv(bool_(false))),
        ("m v=False", mv(bool_(false))),
        ("m v=FALSE", mv(bool_(false))),
        ("m v=tRUE", err("invalid field value")),
        ("m v=yes", err("invalid field value")),
        ("m v=truee", err("invalid field value")),
        ("m v=tr", err("invalid field value")),
        ("m v=fi", err("invalid field value")),
        (r#"m v="true""#, mv(s("true"))),
        // --- strings --------------------------------------------------------
        (r#"m v="hello""#, mv(s("hello"))),
        (r#"m v="""#, mv(s(""))),
        (r#"m v="a\"b""#, mv(s(r#"a"b"#))),
        (r#"m v="a\\b""#, mv(s(r"a\b"))),
        (r#"m v="a\b""#, mv(s(r"a\b"))),
        (r#"m v="a\\\"b""#, mv(s(r#"a\"b"#))),
        (r#"m v="a\\\b""#, mv(s(r"a\\b"))),
        (r#"m v="a\\\\b""#, mv(s(r"a\\b"))),
        (r#"m v="trailing\\""#, mv(s(r"trailing\"))),
        (r#"m v="\"""#, mv(s(r#"""#))),
        (r#"m v="\n""#, mv(s(r"\n"))),
        (r#"m v="a,b=c d""#, mv(s("a,b=c d"))),
        ("m v=\"line1\nline2\"", mv(s("line1\nline2"))),
        ("m v=\"\n\"", mv(s("\n"))),
        ("m v=\"tab\there\"", mv(s("tab\there"))),
        ("m v=\"cr\r\nlf\"", mv(s("cr\r\nlf"))),
        (r#"m v="日本語 🙂""#, mv(s("日本語 🙂"))),
        (r#"m v="x=1 2""#, mv(s("x=1 2"))),
        (r#"m v="a",w=1"#, ok("m", &[], &[("v", s("a")), ("w", fl(1.0))], None)),
        (r#"m v="a" 123"#, ok("m", &[], &[("v", s("a"))], Some(123))),
        (r#"m v="a b" 123  "#, ok("m", &[], &[("v", s("a b"))], Some(123))),
        (r#"m v="unterminated"#, err(r#"unterminated string field value for field "v""#)),
        (r#"m v="a\""#, err("unterminated string field value")),
        (r#"m v=""#, err("unterminated string field value")),
        (r#"m v="a"b"#, err("unexpected characters after closing quote")),
        (r#"m v="a""b""#, err("unexpected characters after closing quote")),
        (r#"m v=a"b""#, err(r#"invalid field value "a\"b\"""#)),
        ("m v='a'", err("invalid field value")),
        ("m v=hello", err(r#"invalid field value "hello" for field "v""#)),
        // --- timestamps -----------------------------------------------------
        ("m v=1 0", ts(0)),
        ("m v=1 -1", ts(-1)),
        ("m v=1 -1465839830100400200", ts(-1465839830100400200)),
        ("m v=1 0123", ts(123)),
        ("m v=1 9223372036854775807", ts(i64::MAX)),
        ("m v=1 -9223372036854775808", ts(i64::MIN)),
        ("m v=1 9223372036854775808", err(r#"timestamp out of range "9223372036854775808""#)),
        ("m v=1 -9223372036854775809", err("timestamp out of range")),
        ("m v=1 99999999999999999999999999", err("timestamp out of range")),
        ("m v=1 abc", err(r#"invalid timestamp "abc""#)),
        ("m v=1 +1", err(r#"invalid timestamp "+1""#)),
        ("m v=1 1.5", err("invalid timestamp")),
        ("m v=1 1e9", err("invalid timestamp")),
        ("m v=1 -", err("invalid timestamp")),
        ("m v=1 12a", err("invalid timestamp")),
        ("m v=1 ,w=2", err("invalid timestamp")),
        ("m v=1 123 456", err(r#"unexpected trailing content after timestamp: "456""#)),
        ("m v=1 123 x y", err("unexpected trailing content")),
        ("m v=1 123 # comment", err("unexpected trailing content")),
        // --- duplicates -----------------------------------------------------
        ("m a=1,b=2,a=3", ok("m", &[], &[("a", fl(3.0)), ("b", fl(2.0))], None)),
        (r#"m a=1i,a="x""#, ok("m", &[], &[("a", s("x"))], None)),
        (r"m a\ b=1,a\ b=2", ok("m", &[], &[("a b", fl(2.0))], None)),
        ("m a=1,a=2,a=3 7", ok("m", &[], &[("a", fl(3.0))], Some(7))),
        ("m a=1,b=2,c=3,b=4,a=5", ok("m", &[], &[("a", fl(5.0)), ("b", fl(4.0)), ("c", fl(3.0))], None)),
        // --- error precedence / mixed ----------------------------------------
        ("m,a=1,a=2 v=x", err("duplicate tag key")),
        ("m v=x 123abc", err("invalid field value")),
        (r#"m v="ok",w=bad"#, err(r#"invalid field value "bad" for field "w""#)),
    ]
}

fn check_case(input: &str, want: &Want) -> Result<(), String> {
    let got = parse_line(input);
    match (want, got) {
        (Want::Line(expected), Ok(actual)) => {
            if *expected == actual {
                Ok(())
            } else {
                Err(format!("expected {expected:?}\n      got {actual:?}"))
            }
        }
        (Want::Line(expected), Err(e)) => Err(format!("expected {expected:?}\n      got error {e:?}")),
        (Want::Err(sub), Ok(actual)) => Err(format!("expected error containing {sub:?}\n      got {actual:?}")),
        (Want::Err(sub), Err(e)) => {
            if e.contains(sub) {
                Ok(())
            } else {
                Err(format!("expected error containing {sub:?}\n      got error {e:?}"))
            }
        }
    }
}

#[test]
fn table_driven_edge_cases() {
    let cases = cases();
    let mut failures = Vec::new();
    for (input, want) in &cases {
        if let Err(msg) = check_case(input, want) {
            failures.push(format!("input {input:?}\n      {msg}"));
        }
    }
    println!("lp table cases: {}", cases.len());
    assert!(cases.len() >= 120, "only {} cases", cases.len());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn negative_zero_keeps_its_sign() {
    let line = parse_line("m v=-0.0").unwrap();
    match line.fields[0].1 {
        FieldValue::F64(v) => assert!(v == 0.0 && v.is_sign_negative()),
        ref other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unescaped_input_is_borrowed_and_escaped_input_is_owned() {
    let line = parse_line(r#"cpu,host=a,k=v\ x f=1,g="str",h="q\"s" 1"#).unwrap();
    assert!(matches!(line.measurement, Cow::Borrowed("cpu")));
    assert!(matches!(line.tags[0].0, Cow::Borrowed("host")));
    assert!(matches!(line.tags[0].1, Cow::Borrowed("a")));
    assert!(matches!(&line.tags[1].1, Cow::Owned(v) if v == "v x"));
    assert!(matches!(line.fields[0].0, Cow::Borrowed("f")));
    assert!(matches!(&line.fields[1].1, FieldValue::Str(Cow::Borrowed("str"))));
    assert!(matches!(&line.fields[2].1, FieldValue::Str(Cow::Owned(v)) if v == "q\"s"));

    // A backslash that escapes nothing does not force an allocation.
    let line = parse_line(r#"c\pu,t\x=a\b f\g="s\t""#).unwrap();
    assert!(matches!(line.measurement, Cow::Borrowed(r"c\pu")));
    assert!(matches!(line.tags[0].0, Cow::Borrowed(r"t\x")));
    assert!(matches!(line.tags[0].1, Cow::Borrowed(r"a\b")));
    assert!(matches!(line.fields[0].0, Cow::Borrowed(r"f\g")));
    assert!(matches!(&line.fields[0].1, FieldValue::Str(Cow::Borrowed(r"s\t"))));

    let line = parse_line(r"c\,pu v=1").unwrap();
    assert!(matches!(&line.measurement, Cow::Owned(m) if m == "c,pu"));
}

#[test]
fn many_tags_and_fields_use_the_hashed_duplicate_check() {
    let tags: Vec<String> = (0..40).map(|i| format!("t{i}=v{i}")).collect();
    let fields: Vec<String> = (0..40).map(|i| format!("f{i}={i}i")).collect();
    let line = format!("m,{} {}", tags.join(","), fields.join(","));
    let parsed = parse_line(&line).unwrap();
    assert_eq!(parsed.tags.len(), 40);
    assert_eq!(parsed.fields.len(), 40);
    assert_eq!(parsed.fields[39], (Cow::Borrowed("f39"), FieldValue::I64(39)));

    let dup_tag = format!("m,{},t7=x {}", tags.join(","), fields.join(","));
    assert_eq!(parse_line(&dup_tag).unwrap_err(), r#"duplicate tag key "t7""#);

    let dup_fields = format!("m {},f3=-3i,f0=\"zero\"", fields.join(","));
    let parsed = parse_line(&dup_fields).unwrap();
    assert_eq!(parsed.fields.len(), 40);
    assert_eq!(parsed.fields[0], (Cow::Borrowed("f0"), FieldValue::Str(Cow::Borrowed("zero"))));
    assert_eq!(parsed.fields[3], (Cow::Borrowed("f3"), FieldValue::I64(-3)));
    assert_eq!(parsed.fields[4], (Cow::Borrowed("f4"), FieldValue::I64(4)));
}

#[test]
fn long_values_are_truncated_in_error_messages() {
    let long = "x".repeat(1000);
    let e = parse_line(&format!("m v={long}")).unwrap_err();
    assert!(e.len() < 200, "{e}");
    assert!(e.starts_with("invalid field value \"xxxx"), "{e}");
    assert!(e.contains("...\" for field") || e.contains("\"... for field"), "{e}");

    // Truncation respects UTF-8 boundaries.
    let long = "é".repeat(100);
    let e = parse_line(&format!("m v=1 {long}")).unwrap_err();
    assert!(e.starts_with("invalid timestamp \"éé"), "{e}");
}

// ---------------------------------------------------------------------------
// parse_lines
// ---------------------------------------------------------------------------

type Item<'a> = Result<(usize, &'a str, ParsedLine<'a>), LineError>;

fn summarize(items: &[Item<'_>]) -> Vec<(usize, Result<String, String>)> {
    items
        .iter()
        .map(|item| match item {
            Ok((n, raw, _)) => (*n, Ok(raw.to_string())),
            Err(e) => (e.line_number, Err(e.message.clone())),
        })
        .collect()
}

#[test]
fn parse_lines_numbers_comments_blanks_and_multiline_strings() {
    let body = "# header comment\n\
                \n\
                cpu v=1 1\n   \n  # indented comment\n\
                cpu,host=a s=\"multi\nline\nstring\" 2\r\n\
                bad line\n\
                cpu v=2i 3\r\n\
                \t\r\n\
                mem free=10u\n";
    let items: Vec<_> = parse_lines(body).collect();
    assert_eq!(
        summarize(&items),
        vec![
            (3, Ok("cpu v=1 1".to_string())),
            (6, Ok("cpu,host=a s=\"multi\nline\nstring\" 2".to_string())),
            (9, Err(r#"missing field value for field "line""#.to_string())),
            (10, Ok("cpu v=2i 3".to_string())),
            (12, Ok("mem free=10u".to_string())),
        ]
    );
    match &items[1] {
        Ok((_, _, line)) => {
            assert_eq!(line.fields[0], (Cow::Borrowed("s"), FieldValue::Str(Cow::Borrowed("multi\nline\nstring"))))
        }
        Err(e) => panic!("{e}"),
    }
    let e = items[2].as_ref().unwrap_err();
    assert_eq!(e.original_line, "bad line");
    assert_eq!(e.to_string(), r#"line 9: missing field value for field "line": bad line"#);
}

#[test]
fn parse_lines_edge_bodies() {
    assert_eq!(parse_lines("").count(), 0);
    assert_eq!(parse_lines("\n\n\r\n  \t \n").count(), 0);
    assert_eq!(parse_lines("# only a comment").count(), 0);
    assert_eq!(parse_lines("#a\n#b\n").count(), 0);

    // No trailing newline; CRLF everywhere.
    let items: Vec<_> = parse_lines("a v=1\r\nb v=2\r\nc v=3").collect();
    assert_eq!(
        summarize(&items),
        vec![(1, Ok("a v=1".to_string())), (2, Ok("b v=2".to_string())), (3, Ok("c v=3".to_string())),]
    );

    // A quote inside a comment does not start a string.
    let items: Vec<_> = parse_lines("# \"unbalanced\na v=1\nb v=2").collect();
    assert_eq!(summarize(&items).iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 3]);

    // A quote in a tag value or inside an unquoted field value is not a string.
    let items: Vec<_> = parse_lines("c,t=\"x v=1\nc v=a\"b\nc v=2").collect();
    assert_eq!(
        summarize(&items),
        vec![
            (1, Ok("c,t=\"x v=1".to_string())),
            (2, Err(r#"invalid field value "a\"b" for field "v""#.to_string())),
            (3, Ok("c v=2".to_string())),
        ]
    );

    // Escaped quote keeps the string open across the newline.
    let items: Vec<_> = parse_lines("c s=\"a\\\"\nb\" 1\nc v=1").collect();
    assert_eq!(summarize(&items), vec![(1, Ok("c s=\"a\\\"\nb\" 1".to_string())), (3, Ok("c v=1".to_string()))]);

    // Escaped backslash closes the string before the newline.
    let items: Vec<_> = parse_lines("c s=\"a\\\\\"\nc v=1").collect();
    assert_eq!(summarize(&items), vec![(1, Ok("c s=\"a\\\\\"".to_string())), (2, Ok("c v=1".to_string()))]);

    // Second string field spanning lines, and an escaped '=' in a key.
    let items: Vec<_> = parse_lines("c a=1,k\\==\"x\ny\",b=\"\n\n\" 5\nd v=1\n").collect();
    assert_eq!(summarize(&items).iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 5]);
    assert!(items.iter().all(Result::is_ok));

    // An unterminated string swallows the rest of the body.
    let items: Vec<_> = parse_lines("a v=1\nc s=\"abc\nc v=1\nc v=2\n").collect();
    assert_eq!(
        summarize(&items),
        vec![(1, Ok("a v=1".to_string())), (2, Err(r#"unterminated string field value for field "s""#.to_string())),]
    );

    // Leading whitespace is kept in the original line; a '#' that is not
    // the first non-whitespace character is not a comment.
    let items: Vec<_> = parse_lines("  a v=1\n\tb,#=x v=1\n").collect();
    assert_eq!(summarize(&items), vec![(1, Ok("  a v=1".to_string())), (2, Ok("\tb,#=x v=1".to_string()))]);

    // Mixed good and bad lines: errors do not stop the iteration.
    let body = "ok v=1\n,bad v=1\nok v=2 abc\nok v=3 3\nok v=\"x\" 4 5\nok,t=1,t=2 v=1\nok v=4";
    let items: Vec<_> = parse_lines(body).collect();
    let got: Vec<_> = summarize(&items).into_iter().map(|(n, r)| (n, r.is_ok())).collect();
    assert_eq!(got, vec![(1, true), (2, false), (3, false), (4, true), (5, false), (6, false), (7, true)]);
}

// ---------------------------------------------------------------------------
// Precision
// ---------------------------------------------------------------------------

#[test]
fn precision_from_str() {
    let ok = [
        ("auto", Precision::Auto),
        ("s", Precision::Second),
        ("second", Precision::Second),
        ("ms", Precision::Millisecond),
        ("millisecond", Precision::Millisecond),
        ("us", Precision::Microsecond),
        ("u", Precision::Microsecond),
        ("microsecond", Precision::Microsecond),
        ("ns", Precision::Nanosecond),
        ("n", Precision::Nanosecond),
        ("nanosecond", Precision::Nanosecond),
    ];
    for (text, want) in ok {
        assert_eq!(text.parse::<Precision>(), Ok(want), "{text}");
    }
    for bad in ["", "S", "NS", "Auto", "seconds", "h", "m", "µs", " s", "s "] {
        let e = bad.parse::<Precision>().unwrap_err();
        assert!(e.contains("invalid precision"), "{e}");
        assert!(e.contains(VALID_PRECISIONS), "{e}");
    }
    assert_eq!(Precision::default(), Precision::Auto);
}

#[test]
fn precision_to_nanos_fixed_units() {
    assert_eq!(Precision::Second.to_nanos(1), Some(1_000_000_000));
    assert_eq!(Precision::Second.to_nanos(-2), Some(-2_000_000_000));
    assert_eq!(Precision::Millisecond.to_nanos(1), Some(1_000_000));
    assert_eq!(Precision::Microsecond.to_nanos(1), Some(1_000));
    assert_eq!(Precision::Nanosecond.to_nanos(1), Some(1));
    assert_eq!(Precision::Nanosecond.to_nanos(i64::MAX), Some(i64::MAX));
    assert_eq!(Precision::Nanosecond.to_nanos(i64::MIN), Some(i64::MIN));
    for p in [Precision::Second, Precision::Millisecond, Precision::Microsecond, Precision::Nanosecond, Precision::Auto]
    {
        assert_eq!(p.to_nanos(0), Some(0), "{p:?}");
    }

    // Overflow boundaries.
    let max_s = i64::MAX / 1_000_000_000;
    assert_eq!(Precision::Second.to_nanos(max_s), Some(max_s * 1_000_000_000));
    assert_eq!(Precision::Second.to_nanos(max_s + 1), None);
    let min_s = i64::MIN / 1_000_000_000;
    assert_eq!(Precision::Second.to_nanos(min_s), Some(min_s * 1_000_000_000));
    assert_eq!(Precision::Second.to_nanos(min_s - 1), None);
    assert_eq!(Precision::Millisecond.to_nanos(i64::MAX / 1_000_000 + 1), None);
    assert_eq!(Precision::Microsecond.to_nanos(i64::MAX / 1_000 + 1), None);
    assert_eq!(Precision::Microsecond.to_nanos(i64::MIN / 1_000 - 1), None);
    assert_eq!(Precision::Second.to_nanos(i64::MAX), None);
    assert_eq!(Precision::Millisecond.to_nanos(i64::MIN), None);
}

#[test]
fn precision_auto_thresholds() {
    let auto = |t: i64| Precision::Auto.resolve(t);
    assert_eq!(auto(0), Precision::Second);
    assert_eq!(auto(1_708_976_567), Precision::Second);
    assert_eq!(auto(4_999_999_999), Precision::Second);
    assert_eq!(auto(-4_999_999_999), Precision::Second);
    assert_eq!(auto(5_000_000_000), Precision::Millisecond);
    assert_eq!(auto(-5_000_000_000), Precision::Millisecond);
    assert_eq!(auto(1_708_976_567_000), Precision::Millisecond);
    assert_eq!(auto(4_999_999_999_999), Precision::Millisecond);
    assert_eq!(auto(5_000_000_000_000), Precision::Microsecond);
    assert_eq!(auto(1_708_976_567_000_000), Precision::Microsecond);
    assert_eq!(auto(4_999_999_999_999_999), Precision::Microsecond);
    assert_eq!(auto(5_000_000_000_000_000), Precision::Nanosecond);
    assert_eq!(auto(-5_000_000_000_000_000), Precision::Nanosecond);
    assert_eq!(auto(1_708_976_567_000_000_000), Precision::Nanosecond);
    assert_eq!(auto(i64::MAX), Precision::Nanosecond);
    assert_eq!(auto(i64::MIN), Precision::Nanosecond);
    for fixed in [Precision::Second, Precision::Millisecond, Precision::Microsecond, Precision::Nanosecond] {
        assert_eq!(fixed.resolve(5_000_000_000_000_000), fixed);
    }

    // The same instant written in each unit converts to the same nanos.
    let want = Some(1_708_976_567_000_000_000);
    assert_eq!(Precision::Auto.to_nanos(1_708_976_567), want);
    assert_eq!(Precision::Auto.to_nanos(1_708_976_567_000), want);
    assert_eq!(Precision::Auto.to_nanos(1_708_976_567_000_000), want);
    assert_eq!(Precision::Auto.to_nanos(1_708_976_567_000_000_000), want);
    assert_eq!(Precision::Auto.to_nanos(-1_708_976_567), Some(-1_708_976_567_000_000_000));

    // Auto never overflows: the largest value of each band still fits.
    assert_eq!(Precision::Auto.to_nanos(4_999_999_999), Some(4_999_999_999_000_000_000));
    assert_eq!(Precision::Auto.to_nanos(-4_999_999_999), Some(-4_999_999_999_000_000_000));
    assert_eq!(Precision::Auto.to_nanos(4_999_999_999_999), Some(4_999_999_999_999_000_000));
    assert_eq!(Precision::Auto.to_nanos(4_999_999_999_999_999), Some(4_999_999_999_999_999_000));
    assert_eq!(Precision::Auto.to_nanos(i64::MAX), Some(i64::MAX));
    assert_eq!(Precision::Auto.to_nanos(i64::MIN), Some(i64::MIN));
}

// ---------------------------------------------------------------------------
// Property-style tests (deterministic PRNG, no external crates)
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const NAME_CHARS: &[char] =
    &['a', 'b', 'Z', '0', '9', ' ', ',', '=', '\\', '"', 'é', '東', '🙂', '-', '.', '#', '\'', '\r'];
const STRING_EXTRA: &[char] = &['\n', '\t', '\r', '\0'];

fn random_name(rng: &mut Rng, extra: &[char]) -> String {
    let len = 1 + rng.below(6);
    (0..len)
        .map(|_| if !extra.is_empty() && rng.below(5) == 0 { rng.pick(extra) } else { rng.pick(NAME_CHARS) })
        .collect()
}

fn escape(s: &str, specials: &[char]) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn random_value(rng: &mut Rng) -> (FieldValue<'static>, String) {
    match rng.below(6) {
        0 => {
            let v = rng.next() as i64 >> rng.below(64);
            (FieldValue::I64(v), format!("{v}i"))
        }
        1 => {
            let v = rng.next() >> rng.below(64);
            (FieldValue::U64(v), format!("{v}u"))
        }
        2 => {
            let mantissa = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            let exp = rng.below(600) as i32 - 300;
            let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
            let v = sign * mantissa * 10f64.powi(exp);
            let text = if rng.below(2) == 0 { format!("{v:?}") } else { format!("{v:e}") };
            (FieldValue::F64(v), text)
        }
        3 => {
            let b = rng.below(2) == 0;
            let text = if b {
                rng.pick(&["t", "T", "true", "True", "TRUE"])
            } else {
                rng.pick(&["f", "F", "false", "False", "FALSE"])
            };
            (FieldValue::Bool(b), text.to_string())
        }
        _ => {
            let v = if rng.below(6) == 0 { String::new() } else { random_name(rng, STRING_EXTRA) };
            let text = format!("\"{}\"", escape(&v, &['"', '\\']));
            (FieldValue::Str(Cow::Owned(v)), text)
        }
    }
}

/// Generates a random valid line and the `ParsedLine` it must parse to.
fn random_line(rng: &mut Rng) -> (String, ParsedLine<'static>) {
    let mut measurement = random_name(rng, &[]);
    // A leading '#' would make the line a comment in a body; a leading '\r'
    // or trailing '\r' would be eaten as whitespace / CRLF.
    if measurement.starts_with('#') || measurement.starts_with('\r') {
        measurement.insert(0, 'm');
    }
    let mut text = escape(&measurement, &[',', ' ', '\\']);
    let mut tags = Vec::new();
    for i in 0..rng.below(4) {
        let key = format!("k{i}_{}", random_name(rng, &[]));
        let value = random_name(rng, &[]);
        text.push(',');
        text.push_str(&escape(&key, &[',', '=', ' ', '\\']));
        text.push('=');
        text.push_str(&escape(&value, &[',', '=', ' ', '\\']));
        tags.push((Cow::Owned(key), Cow::Owned(value)));
    }
    text.push_str(&" ".repeat(1 + rng.below(2)));
    let mut fields = Vec::new();
    for i in 0..=rng.below(4) {
        let key = format!("f{i}_{}", random_name(rng, &[]));
        let (value, value_text) = random_value(rng);
        if i > 0 {
            text.push(',');
        }
        text.push_str(&escape(&key, &[',', '=', ' ', '\\']));
        text.push('=');
        text.push_str(&value_text);
        fields.push((Cow::Owned(key), value));
    }
    let timestamp = if rng.below(3) == 0 {
        None
    } else {
        let t = rng.next() as i64 >> rng.below(64);
        text.push_str(&" ".repeat(1 + rng.below(2)));
        text.push_str(&t.to_string());
        Some(t)
    };
    if rng.below(4) == 0 {
        text.push(' ');
    }
    let line = ParsedLine { measurement: Cow::Owned(measurement), tags, fields, timestamp };
    (text, line)
}

#[test]
fn random_lines_round_trip_through_parse_line_and_parse_lines() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..300 {
        let mut body = String::new();
        let mut expected = Vec::new();
        let mut physical_line = 1;
        for _ in 0..=rng.below(8) {
            match rng.below(6) {
                0 => {
                    body.push_str("# comment \"with quote\n");
                    physical_line += 1;
                }
                1 => {
                    body.push_str(" \t\r\n");
                    physical_line += 1;
                }
                _ => {}
            }
            let (text, want) = random_line(&mut rng);
            assert_eq!(parse_line(&text).as_ref(), Ok(&want), "line {text:?}");
            let newlines = text.matches('\n').count();
            expected.push((physical_line, text.clone(), want));
            physical_line += 1 + newlines;
            body.push_str(&text);
            body.push_str(if rng.below(2) == 0 { "\n" } else { "\r\n" });
        }
        let got: Vec<_> =
            parse_lines(&body).map(|item| item.unwrap_or_else(|e| panic!("{e}\nbody {body:?}"))).collect();
        assert_eq!(got.len(), expected.len(), "body {body:?}");
        for ((n, raw, line), (want_n, want_raw, want_line)) in got.iter().zip(&expected) {
            assert_eq!(n, want_n, "body {body:?}");
            assert_eq!(raw, want_raw, "body {body:?}");
            assert_eq!(line, want_line, "body {body:?}");
        }
    }
}

const SEEDS: &[&str] = &[
    "cpu,host=a,region=west usage=64.2,idle=30i,n=1u,b=true,s=\"x y\" 1590488773254420000",
    r#"c\,p\ u,t\=k=v\,a\ l\=ue f\ k="str \"q\" \\ \n",g=-1.5e-3 -12"#,
    "m v=\"multi\nline\",w=9223372036854775807i -9223372036854775808",
    "温度,地点=東京 値=18446744073709551615u 0",
    "  m  v=1  2  ",
    "m a=1,a=2,b=f 3",
    "# comment\nm v=1\n\n",
];

const MUTATION_CHARS: &[char] = &[
    '\\', ',', '=', ' ', '"', '\n', '\r', '\t', '#', '-', '+', '.', 'e', 'E', 'i', 'u', 't', 'f', '0', '9', '\0', 'é',
    '🙂',
];

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

fn mutate(rng: &mut Rng, input: &str) -> String {
    let bounds = char_boundaries(input);
    let at = bounds[rng.below(bounds.len())];
    let mut out = input.to_string();
    match rng.below(5) {
        0 => out.truncate(at),
        1 => out.insert(at, rng.pick(MUTATION_CHARS)),
        2 => {
            if at < out.len() {
                out.remove(at);
            }
        }
        3 => {
            if at < out.len() {
                out.remove(at);
                out.insert(at, rng.pick(MUTATION_CHARS));
            }
        }
        _ => {
            let other = bounds[rng.below(bounds.len())];
            let (lo, hi) = if at < other { (at, other) } else { (other, at) };
            let piece = input[lo..hi].to_string();
            out.insert_str(at, &piece);
        }
    }
    out
}

/// Reference splitter: always runs the full state machine.
fn reference_split(body: &str) -> Vec<(usize, &str)> {
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut line_number = 1;
    while pos < b.len() {
        let mut content = pos;
        while matches!(b.get(content), Some(b' ' | b'\t' | b'\r')) {
            content += 1;
        }
        let (end, inner) = match b.get(content) {
            None => break,
            Some(b'\n') => (content, 0),
            Some(b'#') => (find_byte(b, content, b'\n').unwrap_or(b.len()), 0),
            Some(_) => {
                let (end, inner) = find_line_end_slow(b, content);
                out.push((line_number, strip_cr(&body[pos..end])));
                (end, inner)
            }
        };
        line_number += 1 + inner;
        pos = end + 1;
    }
    out
}

fn check_invariants(input: &str) {
    if let Ok(line) = parse_line(input) {
        assert!(!line.measurement.is_empty(), "{input:?}");
        assert!(!line.fields.is_empty(), "{input:?}");
        assert!(first_duplicate(&line.tags).is_none(), "{input:?}");
        assert!(first_duplicate(&line.fields).is_none(), "{input:?}");
        assert!(line.tags.iter().all(|(k, v)| !k.is_empty() && !v.is_empty()), "{input:?}");
        for (_, v) in &line.fields {
            if let FieldValue::F64(f) = v {
                assert!(f.is_finite(), "{input:?}");
            }
        }
    }
    let physical_lines = input.matches('\n').count() + 1;
    let mut last = 0;
    for item in parse_lines(input) {
        let (n, raw) = match &item {
            Ok((n, raw, _)) => (*n, *raw),
            Err(e) => (e.line_number, e.original_line.as_str()),
        };
        assert!(n > last && n <= physical_lines, "{input:?}: line {n}");
        assert!(input.contains(raw), "{input:?}");
        assert!(!raw.trim().is_empty(), "{input:?}");
        last = n;
    }
    let split: Vec<(usize, String)> = parse_lines(input)
        .map(|item| match item {
            Ok((n, raw, _)) => (n, raw.to_string()),
            Err(e) => (e.line_number, e.original_line),
        })
        .collect();
    let reference: Vec<(usize, String)> =
        reference_split(input).into_iter().map(|(n, raw)| (n, raw.to_string())).collect();
    assert_eq!(split, reference, "{input:?}");
}

#[test]
fn fuzz_mutations_never_panic() {
    let mut rng = Rng(42);
    let mut inputs: Vec<String> = SEEDS.iter().map(ToString::to_string).collect();
    inputs.extend(cases().into_iter().map(|(input, _)| input.to_string()));

    let mut checked = 0usize;
    for seed in &inputs {
        // Every truncation of every seed.
        for end in char_boundaries(seed) {
            check_invariants(&seed[..end]);
            check_invariants(&seed[end..]);
            checked += 2;
        }
        // Random stacked mutations.
        for _ in 0..150 {
            let mut m = seed.clone();
            for _ in 0..=rng.below(4) {
                m = mutate(&mut rng, &m);
            }
            check_invariants(&m);
            checked += 1;
        }
    }
    // Random bodies glued from mutated lines.
    for _ in 0..300 {
        let body: Vec<String> = (0..=rng.below(6))
            .map(|_| {
                let pick = rng.below(inputs.len());
                mutate(&mut rng, &inputs[pick])
            })
            .collect();
        check_invariants(&body.join("\n"));
        checked += 1;
    }
    // Random bytes from the special alphabet.
    for _ in 0..3000 {
        let len = rng.below(24);
        let text: String = (0..len).map(|_| rng.pick(MUTATION_CHARS)).collect();
        check_invariants(&text);
        checked += 1;
    }
    println!("lp fuzz inputs checked: {checked}");
}
