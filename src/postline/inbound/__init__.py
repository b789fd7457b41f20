"""Mail arriving at the bounce domain: delivery status notifications and complaints."""
