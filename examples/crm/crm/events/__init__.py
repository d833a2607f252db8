"""The CRM's database events; ``create_app`` imports every module here (autodiscover)."""
