use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

#[tracked(train, params(cfg))]
fn train(cfg: &u32, backend: &FakeBackend) {}

fn main() {}
