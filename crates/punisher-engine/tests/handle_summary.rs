//! `handleSummary(data)`: k6's end-of-run hook, run by `run_handle_summary`.

use std::collections::BTreeMap;

use punisher_engine::RunError;
use serde_json::json;

use crate::util::*;

async fn handle(
    src: &str,
    summary: serde_json::Value,
) -> Result<Option<BTreeMap<String, String>>, RunError> {
    let env = BTreeMap::new();
    let src = format!("export const options = {{ users: 1, rampUp: '0s' }};\n{src}");
    let (_files, s) = scenario(&src, &env);
    let cfg = config(&s, 1, env);
    punisher_engine::run_handle_summary(&s, &cfg, &summary).await
}

#[tokio::test]
async fn handle_summary_gets_the_summary_and_returns_files() {
    let files = handle(
        r#"
export default function () {}
export function handleSummary(data) {
  const reqs = data.metrics.http_reqs.values.count;
  return {
    stdout: `requests: ${reqs}\n`,
    'out/summary.json': JSON.stringify(data),
    'numbers.json': { reqs },
  };
}
"#,
        json!({"metrics": {"http_reqs": {"values": {"count": 42}}}}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(files["stdout"], "requests: 42\n");
    let copy: serde_json::Value = serde_json::from_str(&files["out/summary.json"]).unwrap();
    assert_eq!(copy["metrics"]["http_reqs"]["values"]["count"], 42);
    // Not a string: written as its JSON text.
    assert_eq!(files["numbers.json"], r#"{"reqs":42}"#);
    assert_eq!(files.len(), 3);
}

#[tokio::test]
async fn an_async_handle_summary_is_awaited() {
    let files = handle(
        r#"
export default function () {}
export async function handleSummary(data) {
  await new Promise((resolve) => setTimeout(resolve, 10));
  return { stderr: `run ${data.run}` };
}
"#,
        json!({"run": "r1"}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(files, BTreeMap::from([("stderr".into(), "run r1".into())]));
}

#[tokio::test]
async fn without_handle_summary_there_is_nothing_to_do() {
    let none = handle("export default function () {}", json!({}))
        .await
        .unwrap();
    assert_eq!(none, None);
    let empty = handle(
        "export default function () {}\nexport function handleSummary() {}",
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(empty, Some(BTreeMap::new()));
}

#[tokio::test]
async fn a_throwing_or_wrong_handle_summary_is_a_clear_error() {
    let err = handle(
        "export default function () {}\nexport function handleSummary(data) {\n  throw new Error('boom ' + data.x);\n}\n",
        json!({"x": 1}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::HandleSummary(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("handleSummary() failed") && text.contains("boom 1"),
        "{text}"
    );
    assert!(text.contains("main.js:4"), "no location: {text}");

    let err = handle(
        "export default function () {}\nexport function handleSummary() { return ['a']; }",
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RunError::HandleSummaryResult(_)), "{err:?}");
    assert!(err.to_string().contains("an array"), "{err}");
}
