"""Ecosistema: self-hostable, AI-native commerce and sales platform."""

__version__ = "0.1.0"
