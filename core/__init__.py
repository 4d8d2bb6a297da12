"""The OTP engine: issuing, re-sending and validating codes, independent of any UI."""
