"""accept: validate send requests, expand personalizations into messages, admission."""
