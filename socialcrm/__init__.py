"""socialcrm: social engagement in, CRM leads and helpdesk tickets out."""

__version__ = "0.1.0"
