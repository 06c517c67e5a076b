"""diffice.commands"""
