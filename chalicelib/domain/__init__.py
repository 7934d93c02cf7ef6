"""Pure domain: states, events, commands, the transition table. No I/O, no boto3."""
