use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
struct C {
    lr: f64,
    #[sapsan(rename = "lr")]
    learning_rate: f64,
}

fn main() {}
