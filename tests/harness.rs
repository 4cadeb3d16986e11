//! The harness itself: the test server is up and the Python judge can talk to it.
mod common;

#[test]
fn test_server_is_mlflow_and_judge_reads_it() {
    let v = common::judge(
        "print(json.dumps({'version': mlflow.__version__, 'default': client.get_experiment('0').name}))",
        &[],
    );
    assert_eq!(v["version"], "3.17.2");
    assert_eq!(v["default"], "Default");
}
