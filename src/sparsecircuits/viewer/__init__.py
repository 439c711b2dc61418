from .render import circuit_page_data, render_html, render_markdown, view

__all__ = ["circuit_page_data", "render_html", "render_markdown", "view"]
