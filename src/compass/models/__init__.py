"""Models: tiny offline builders (tokenizer, LLM, VLM, vision tower) and VLM composition."""
