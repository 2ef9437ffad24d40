//! Trigger model tests: specification parsing and text, the checks of a new trigger.

use super::*;

fn new(spec: &str, plugin: &str) -> NewTrigger {
    NewTrigger { name: "t".into(), plugin_filename: plugin.into(), specification: spec.into(), ..NewTrigger::default() }
}

#[test]
fn specs_parse_and_keep_their_text() {
    for text in ["table:cpu", "all_tables", "every:10s", "cron:0 */5 * * * *", "cron:30 2 * * *", "request:/a/b/"] {
        let spec = TriggerSpec::parse(text).unwrap();
        assert_eq!(spec.to_string(), text);
        assert_eq!(String::from(spec.clone()), text);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<TriggerSpec>(&json).unwrap(), spec);
    }
    assert_eq!(TriggerSpec::parse("request:/a/b/").unwrap().request_path(), Some("a/b"));
    assert!(TriggerSpec::parse("table:cpu").unwrap().wants_table("cpu"));
    assert!(!TriggerSpec::parse("table:cpu").unwrap().wants_table("mem"));
    assert!(TriggerSpec::parse("all_tables").unwrap().wants_table("mem"));
    assert!(!TriggerSpec::parse("every:1s").unwrap().is_wal());
}

#[test]
fn bad_specs_say_why() {
    for (text, want) in [
        ("table:", "is not one of"),
        ("tables:cpu", "is not one of"),
        ("every:0s", "minimum schedule interval"),
        ("cron:* * *", "expected 6 fields"),
        ("request:../x", "'..' segments"),
        ("request:a b", "spaces"),
    ] {
        let e = TriggerSpec::parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn new_triggers_are_checked_before_anything_is_stored() {
    let def = new("table:cpu", "hot.py").validate().unwrap();
    assert_eq!(def.specification, TriggerSpec::Table("cpu".into()));
    assert_eq!(def.worker_count(), 1);
    for (t, want) in [
        (new("table:cpu", "../../etc/passwd"), "Path traversal detected"),
        (new("table:cpu", "/etc/passwd"), "Path traversal detected"),
        (new("table:cpu", ".venv/bin/python"), "Path traversal detected"),
        (new("table:cpu", "gh:../x.py"), "Path traversal detected"),
        (new("cron:0 0 0 30 2 *", "a.py"), "never fires"),
        (NewTrigger { workers: 2, ..new("request:x", "a.py") }, "needs run_async"),
        (NewTrigger { workers: 65, run_async: true, ..new("request:x", "a.py") }, "at most 64"),
        (NewTrigger { error_behavior: Some("explode".into()), ..new("all_tables", "a.py") }, "unknown error behavior"),
        (NewTrigger { name: String::new(), ..new("all_tables", "a.py") }, "name is empty"),
    ] {
        let e = t.clone().validate().unwrap_err().to_string();
        assert!(e.contains(want), "{t:?}: {e}");
    }
    let def =
        NewTrigger { workers: 3, run_async: true, error_behavior: Some("Retry".into()), ..new("request:x", "a.py") }
            .validate()
            .unwrap();
    assert_eq!((def.worker_count(), def.error_behavior), (3, ErrorBehavior::Retry));
}
