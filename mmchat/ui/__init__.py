"""Gradio front end. Modules here import no torch at import time; models load via `Runtime`."""
