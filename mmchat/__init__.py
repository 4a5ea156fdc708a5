"""mmchat."""
