use sapsan_core::tracked;
use sapsan_core::tracking::FakeBackend;

trait Fit {
    fn fit(&self, backend: &FakeBackend);
}

struct Model;

// A trait impl cannot take the `fit_tracked` companion: `#[tracked(train, companion = false)]`.
impl Fit for Model {
    #[tracked(train)]
    fn fit(&self, backend: &FakeBackend) {}
}

fn main() {}
