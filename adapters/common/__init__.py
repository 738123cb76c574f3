"""What several adapters share (not adapters themselves): the CLIP cost-volume segmenter base
and the prompt-template resolution."""
