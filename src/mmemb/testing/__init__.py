"""Test helpers: tiny offline models and fixtures for exercising mmemb without downloads."""
