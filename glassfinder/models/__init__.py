"""Model definitions: one frozen config dataclass and one build function per model."""
