"""pixellm/train."""
