"""TokenBridge (arXiv 2503.16430): the post-training quantizer, the masked autoregressive transformer and scheduler
and the TokenBridge pipelines. Every public name also imports from `tokenset_diffusers`."""
