mod steps;

fn main() {}
