"""diffice.modules"""
