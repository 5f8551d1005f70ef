"""Toy extensions written as a user would write them (docs/extending.md): each is one file whose
last statement registers it; nothing in the package is edited."""
