//! Compile errors of both macros: each message is clear and points at the offending tokens.
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
