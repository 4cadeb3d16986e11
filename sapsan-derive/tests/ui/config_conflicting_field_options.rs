use sapsan_core::ModelConfig;

fn fmt(_: &Option<f64>) -> String {
    String::new()
}

#[derive(ModelConfig)]
struct C {
    #[sapsan(skip, rename = "x")]
    a: u32,
    #[sapsan(with = fmt, default = 1.0)]
    b: Option<f64>,
}

fn main() {}
