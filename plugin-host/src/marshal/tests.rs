//! Checked against the real decoder: every encoding is loaded by `python3 -c marshal.loads`
//! and compared with the expected Python `repr`.

use std::{io::Write as _, process::Command, sync::Arc};

use arrow::{
    array::{
        BinaryArray, BooleanArray, Date32Array, DictionaryArray, Float32Array, Float64Array, Int8Array, Int64Array,
        StringArray, TimestampNanosecondArray, TimestampSecondArray, UInt32Array, UInt64Array,
    },
    datatypes::{Int32Type, UInt8Type},
    record_batch::RecordBatch,
};

use super::*;

fn python_repr(bytes: &[u8]) -> String {
    python_run("import marshal, sys; print(repr(marshal.loads(sys.stdin.buffer.read())))", bytes)
}

/// Run `script` with `bytes` on stdin and the SDK importable; its trimmed stdout.
fn python_run(script: &str, bytes: &[u8]) -> String {
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python-sdk");
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", sdk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 on PATH");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

#[test]
fn scalars_round_trip_through_python() {
    let mut w = Writer::default();
    let ints: [i128; 9] = [
        0,
        -1,
        i32::MAX as i128,
        i32::MIN as i128,
        1 << 31,
        -(1 << 40),
        i64::MAX as i128,
        u64::MAX as i128,
        1_700_000_000_000_000_000,
    ];
    w.list(ints.len() + 7);
    for v in ints {
        w.int(v);
    }
    w.float(1.5);
    w.float(-0.0);
    w.bool(true);
    w.none();
    w.str("héllo \"world\"");
    w.str(&"x".repeat(300));
    w.bytes(b"\x00\xff");
    let got = python_repr(&w.finish());
    let expected = format!(
        "[0, -1, 2147483647, -2147483648, 2147483648, -1099511627776, 9223372036854775807, 18446744073709551615, 1700000000000000000, 1.5, -0.0, True, None, 'héllo \"world\"', '{}', b'\\x00\\xff']",
        "x".repeat(300)
    );
    assert_eq!(got, expected);
}

#[test]
fn wal_rows_omit_nulls_and_share_names_and_tags() {
    let host: DictionaryArray<Int32Type> = vec![Some("a"), Some("b"), Some("a")].into_iter().collect();
    let batch = RecordBatch::try_from_iter([
        ("host", Arc::new(host) as _),
        ("usage", Arc::new(Float64Array::from(vec![Some(1.5), None, Some(3.0)])) as _),
        ("n", Arc::new(Int64Array::from(vec![None, Some(-2), Some(3)])) as _),
        ("u", Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, None])) as _),
        ("ok", Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])) as _),
        ("note", Arc::new(StringArray::from(vec![None, Some("ü"), None])) as _),
        ("time", Arc::new(TimestampNanosecondArray::from(vec![1, 2, 1_700_000_000_000_000_000])) as _),
    ])
    .unwrap();
    let bytes = wal_call_args(&[("cpu".to_string(), vec![batch.clone(), batch.slice(0, 1)])]).unwrap();
    assert_eq!(
        python_repr(&bytes),
        "[[{'table_name': 'cpu', 'rows': [\
         {'host': 'a', 'usage': 1.5, 'u': 18446744073709551615, 'ok': True, 'time': 1}, \
         {'host': 'b', 'n': -2, 'ok': False, 'note': 'ü', 'time': 2}, \
         {'host': 'a', 'usage': 3.0, 'n': 3, 'time': 1700000000000000000}, \
         {'host': 'a', 'usage': 1.5, 'u': 18446744073709551615, 'ok': True, 'time': 1}]}]]"
    );
    // Shared: the column name "host" and the tag value "a" are written once each.
    assert_eq!(bytes.windows(4).filter(|w| w == b"host").count(), 1);
}

#[test]
fn query_rows_keep_nulls_and_format_other_types() {
    let batch = RecordBatch::try_from_iter([
        ("d", Arc::new(Date32Array::from(vec![Some(19_000), None])) as _),
        ("b", Arc::new(BinaryArray::from(vec![Some(b"ab".as_ref()), None])) as _),
    ])
    .unwrap();
    let bytes = query_rows(&[batch]).unwrap();
    assert_eq!(python_repr(&bytes), "[{'d': '2022-01-08', 'b': b'ab'}, {'d': None, 'b': None}]");
}

#[test]
fn schedule_and_request_arguments_decode_as_python_values() {
    assert_eq!(python_repr(&schedule_call_args(1_700_000_000)), "[1700000000]");
    let query: std::collections::BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
    let headers: std::collections::BTreeMap<String, String> =
        [("content-type".to_string(), "text/plain".to_string()), ("x-é".to_string(), "ü".to_string())].into();
    let args = request_call_args(query.iter(), headers.iter(), b"\x00\xffbody");
    assert_eq!(python_repr(&args), r"[{'a': '1'}, {'content-type': 'text/plain', 'x-é': 'ü'}, b'\x00\xffbody']");
}

/// Decodes `[table_batches]` sent as columns with the SDK's Python decoder and with the C
/// one (built into a temporary directory), printing both reprs on two lines.
const DECODE_COLUMNS: &str = r#"
import importlib.util, marshal, os, sys, tempfile
from weir_plugin import native, rows
args = marshal.loads(sys.stdin.buffer.read())
print(repr([[{"table_name": n, "rows": rows.python_rows(s)} for n, s in args[0]]]))
dest = tempfile.mkdtemp()
ok, message = native.build(dest)
assert ok, message
so = next(f for f in os.listdir(dest) if f.startswith("_native") and not f.endswith(".stamp"))
spec = importlib.util.spec_from_file_location("weir_plugin._native", os.path.join(dest, so))
c = importlib.util.module_from_spec(spec)
spec.loader.exec_module(c)
print(repr([[{"table_name": n, "rows": c.wal_rows(s)} for n, s in args[0]]]))
"#;

#[test]
fn wal_columns_build_the_same_rows_as_wal_rows() {
    let host: DictionaryArray<Int32Type> = vec![Some("a"), Some("b"), Some("a"), None].into_iter().collect();
    let region: DictionaryArray<UInt8Type> = vec![Some("eu"), Some("eu"), Some("us"), Some("us")].into_iter().collect();
    let wide = RecordBatch::try_from_iter([
        ("host", Arc::new(host) as _),
        ("region", Arc::new(region) as _),
        ("usage", Arc::new(Float64Array::from(vec![Some(1.5), None, Some(f64::NAN), Some(-0.0)])) as _),
        ("f32", Arc::new(Float32Array::from(vec![Some(0.5), Some(2.0), None, None])) as _),
        ("n", Arc::new(Int64Array::from(vec![None, Some(i64::MIN), Some(3), Some(i64::MAX)])) as _),
        ("i8", Arc::new(Int8Array::from(vec![Some(-128), None, Some(127), Some(0)])) as _),
        ("u32", Arc::new(UInt32Array::from(vec![Some(u32::MAX), None, None, Some(7)])) as _),
        ("u", Arc::new(UInt64Array::from(vec![Some(u64::MAX), None, None, Some(0)])) as _),
        ("ok", Arc::new(BooleanArray::from(vec![Some(true), Some(false), None, Some(true)])) as _),
        ("note", Arc::new(StringArray::from(vec![None, Some("ü"), None, Some("")])) as _),
        ("blob", Arc::new(BinaryArray::from(vec![Some(b"\x00".as_ref()), None, None, None])) as _),
        ("day", Arc::new(Date32Array::from(vec![Some(19_000), None, Some(0), None])) as _),
        // 10^10 s is past i64 nanoseconds: it goes as a Python int.
        ("secs", Arc::new(TimestampSecondArray::from(vec![Some(1), None, Some(10_000_000_000), Some(-1)])) as _),
        ("time", Arc::new(TimestampNanosecondArray::from(vec![1, 2, 1_700_000_000_000_000_000, -5])) as _),
    ])
    .unwrap();
    let narrow = RecordBatch::try_from_iter([
        ("time", Arc::new(TimestampNanosecondArray::from(vec![9])) as _),
        ("extra", Arc::new(Int64Array::from(vec![Some(1)])) as _),
    ])
    .unwrap();
    let empty = narrow.slice(0, 0);
    let tables =
        vec![("cpu".to_string(), vec![wide.clone(), wide.slice(1, 2), narrow, empty]), ("empty".to_string(), vec![])];
    let expected = python_repr(&wal_call_args(&tables).unwrap());
    assert!(expected.contains("'secs': 10000000000000000000"), "{expected}");
    let columns = wal_call_args_columns(&tables).unwrap();
    let got = python_run(DECODE_COLUMNS, &columns);
    let (python, c) = got.split_once('\n').expect("two lines");
    assert_eq!(python, expected, "the Python decoder");
    assert_eq!(c, expected, "the C decoder");
}

/// The column kinds of the columns encoding exist three times: here, in the pure-Python
/// decoder (`rows.py`) and in the C row builder (`_native.c`). They must agree, and so must
/// the message limit the worker checks (`worker.py`) with the one both binaries use.
#[test]
fn column_kinds_and_the_message_limit_agree_across_rust_python_and_c() {
    let rust = [
        ("F64", kind::F64),
        ("I64", kind::I64),
        ("U64", kind::U64),
        ("BOOL", kind::BOOL),
        ("REF", kind::REF),
        ("OBJ", kind::OBJ),
    ];
    let rows_py = include_str!("../../../python-sdk/weir_plugin/rows.py");
    let line = rows_py.lines().find(|l| l.ends_with("= range(6)")).expect("rows.py names its kinds with range(6)");
    let python: Vec<&str> = line.trim_end_matches("= range(6)").split(',').map(str::trim).collect();
    let native_c = include_str!("../../../python-sdk/weir_plugin/_native.c");
    let enum_line = native_c.lines().find(|l| l.contains("K_F64")).expect("_native.c has its kind enum");
    for (name, value) in rust {
        assert_eq!(python.iter().position(|p| *p == name).map(|i| i as i128), Some(value), "rows.py {name}");
        let c = format!("K_{name} = {value}");
        assert!(enum_line.contains(&c), "_native.c lacks {c}: {enum_line}");
    }
    let worker_py = include_str!("../../../python-sdk/weir_plugin/worker.py");
    let limit =
        worker_py.lines().find_map(|l| l.strip_prefix("MAX_MESSAGE_BYTES = ")).expect("worker.py states its limit");
    let value: usize = limit.split('*').map(|f| f.trim().parse::<usize>().expect("a product of integers")).product();
    assert_eq!(value, weir_proto::MAX_MESSAGE_BYTES);
}
