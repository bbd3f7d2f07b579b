"""The customer's rules, free of I/O: its fields and representation, its ETag and lane
(customer.py), its events (events.py), the form of its API keys (api_keys.py).

Imports nothing from the service but itself; everything else may import it.
"""
