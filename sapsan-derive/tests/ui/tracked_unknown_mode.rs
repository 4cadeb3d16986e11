use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(trian)]
fn train(backend: &FakeBackend) {}

fn main() {}
