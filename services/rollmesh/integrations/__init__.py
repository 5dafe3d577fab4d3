"""Hosting environments written for other frameworks as rollmesh environments, unchanged."""
