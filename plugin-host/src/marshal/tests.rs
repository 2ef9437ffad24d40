//! Checked against the real decoder: every encoding is loaded by `python3 -c marshal.loads`
//! and compared with the expected Python `repr`.

use std::{io::Write as _, process::Command, sync::Arc};

use arrow::{
    array::{
        BinaryArray, BooleanArray, Date32Array, DictionaryArray, Float64Array, Int64Array,
        StringArray, TimestampNanosecondArray, UInt64Array,
    },
    datatypes::Int32Type,
    record_batch::RecordBatch,
};

use super::*;

fn python_repr(bytes: &[u8]) -> String {
    let mut child = Command::new("python3")
        .args(["-c", "import marshal, sys; print(repr(marshal.loads(sys.stdin.buffer.read())))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 on PATH");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "marshal.loads failed");
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

#[test]
fn scalars_round_trip_through_python() {
    let mut w = Writer::default();
    let ints: [i128; 9] = [0, -1, i32::MAX as i128, i32::MIN as i128, 1 << 31, -(1 << 40), i64::MAX as i128, u64::MAX as i128, 1_700_000_000_000_000_000];
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
    assert_eq!(
        python_repr(&args),
        r"[{'a': '1'}, {'content-type': 'text/plain', 'x-é': 'ü'}, b'\x00\xffbody']"
    );
}
