//! iommu-inspect.
fn main() {}
