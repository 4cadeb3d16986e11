use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
struct C {
    lr: f64,
    #[sapsan(kwargs)]
    extra: Vec<u32>,
}

fn main() {}
