use sapsan_core::ModelConfig;
use sapsan_core::config::Kwargs;

#[derive(ModelConfig)]
struct C {
    #[sapsan(kwargs)]
    one: Kwargs,
    #[sapsan(kwargs)]
    two: Kwargs,
}

fn main() {}
