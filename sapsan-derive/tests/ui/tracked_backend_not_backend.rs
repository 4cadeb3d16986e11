use sapsan_core::tracked;

#[tracked(train, backend = epochs)]
fn train(epochs: u32) {}

fn main() {}
