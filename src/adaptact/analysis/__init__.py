"""Properties, pictures and learned parameters of activations."""

from .properties import Properties, gradient_flow, properties, property_table, response

__all__ = ["Properties", "gradient_flow", "properties", "property_table", "response"]
