"""The dashboard (`tuneloop ui`): a local page over tuneloop's API."""
