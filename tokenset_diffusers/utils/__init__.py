"""What both systems use that is not a public model: loading checks, remote-code files, random draws, validation
and the tiny-model builders of the tests and benchmarks."""
