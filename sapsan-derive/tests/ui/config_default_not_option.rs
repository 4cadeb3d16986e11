use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
struct C {
    lr: f64,
    #[sapsan(default = self.lr * 1e-2)]
    min_lr: f64,
}

fn main() {}
