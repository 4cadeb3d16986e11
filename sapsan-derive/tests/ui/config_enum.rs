use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
enum C {
    A,
    B,
}

fn main() {}
