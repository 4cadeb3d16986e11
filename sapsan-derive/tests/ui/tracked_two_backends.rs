use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(train)]
fn train(a: &FakeBackend, b: &FakeBackend) {}

fn main() {}
