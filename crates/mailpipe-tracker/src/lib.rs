//! The tracking endpoint: open pixel, click redirect and one-click unsubscribe
