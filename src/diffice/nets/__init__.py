"""diffice.nets"""
