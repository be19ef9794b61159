"""TokenSet (arXiv 2503.16425): the set tokenizer, the FSDD transformer and scheduler, set operations and the
TokenSet pipelines (generation, img2img, interpolation). Every public name also imports from `tokenset_diffusers`."""
