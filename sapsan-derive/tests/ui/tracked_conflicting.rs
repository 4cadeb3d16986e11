use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(train, evaluate)]
fn a(backend: &FakeBackend) {}

#[tracked(train, parent = "abc")]
fn b(backend: &FakeBackend) {}

#[tracked(evaluate, name = "x", name = "y")]
fn c(backend: &FakeBackend) {}

fn main() {}
