"""Reading, checking and splitting the user's data."""
