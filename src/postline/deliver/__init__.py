"""deliver: MX routing, the SMTP client, rendering, DKIM, reply classification."""
