"""diffice.data"""
