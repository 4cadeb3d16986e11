use sapsan_core::ModelConfig;

#[derive(ModelConfig)]
struct C(u32, f64);

fn needs_config(_: &impl sapsan_core::config::ModelConfig) {}

fn main() {
    needs_config(&C(1, 2.0)); // no cascade: a dummy impl exists
}
