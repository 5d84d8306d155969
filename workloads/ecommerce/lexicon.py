"""The fixed vocabulary the e-commerce world is drawn from: categories, attributes, intents.

Only constants live here; every random choice over them is made in :mod:`.world`. The category
tree, attribute values and customer-service intents are modelled on the public taxonomies of large
marketplaces (a top-level department, leaf product types with their own size system and materials)
and on the intent sets of customer-service corpora such as Bitext's retail dataset (refund,
delivery, invoice, complaint, ...), written from scratch.
"""

from __future__ import annotations

# size systems: what a product's SIZE field looks like for each leaf type
CLOTHING = ("XS", "S", "M", "L", "XL", "XXL")
SHOE = ("38", "39", "40", "41", "42", "43", "44", "45")
CAPACITY = ("350 ml", "500 ml", "750 ml", "1 L", "1.5 L")
LENGTH = ("1 m", "2 m", "3 m")
SCREEN = ("5.8 inch", "6.1 inch", "6.7 inch")
VOLUME = ("20 L", "30 L", "45 L")

# top category -> leaf product type -> (size system, materials, base price in EUR)
CATEGORIES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...], float]]] = {
    "apparel": {
        "rain jacket": (CLOTHING, ("polyester", "nylon", "recycled polyester"), 89.0),
        "t-shirt": (CLOTHING, ("cotton", "organic cotton", "linen"), 19.0),
        "hoodie": (CLOTHING, ("cotton", "fleece", "wool"), 49.0),
        "sneakers": (SHOE, ("leather", "canvas", "mesh"), 79.0),
    },
    "electronics": {
        "headphones": (LENGTH, ("plastic", "aluminium", "silicone"), 99.0),
        "phone case": (SCREEN, ("silicone", "leather", "plastic"), 15.0),
        "charging cable": (LENGTH, ("nylon", "plastic", "silicone"), 12.0),
        "smartphone": (SCREEN, ("aluminium", "glass", "plastic"), 499.0),
    },
    "home": {
        "coffee mug": (CAPACITY, ("ceramic", "glass", "stainless steel"), 12.0),
        "frying pan": (LENGTH, ("cast iron", "stainless steel", "aluminium"), 39.0),
        "desk lamp": (LENGTH, ("aluminium", "bamboo", "plastic"), 45.0),
        "pillow": (CLOTHING, ("cotton", "linen", "wool"), 25.0),
    },
    "sports": {
        "yoga mat": (LENGTH, ("rubber", "cork", "foam"), 35.0),
        "water bottle": (CAPACITY, ("stainless steel", "plastic", "glass"), 18.0),
        "backpack": (VOLUME, ("nylon", "canvas", "polyester"), 59.0),
        "tent": (VOLUME, ("nylon", "polyester", "canvas"), 149.0),
    },
}

# (source type, target type): a product of the first kind is compatibleWith one of the second
COMPATIBLE = (
    ("phone case", "smartphone"),
    ("charging cable", "smartphone"),
    ("charging cable", "headphones"),
    ("frying pan", "frying pan"),  # lids and stacking sets of the same line
    ("water bottle", "backpack"),
)

COLORS = (
    "black",
    "white",
    "red",
    "navy blue",
    "olive green",
    "grey",
    "beige",
    "sky blue",
    "yellow",
    "burgundy",
    "pink",
    "charcoal",
)

COUNTRIES = ("Germany", "Japan", "Italy", "USA", "China", "Sweden", "Korea", "France", "Vietnam")

PRICE_BANDS = ("budget", "mid-range", "premium")

PLATFORM_NAMES = ("ShopNova", "Marketly", "BuyHub", "Kaufhaus", "Tokomart", "Vendora")

# syllables of generated brand names ("Norvik", "Tazelo", ...)
BRAND_ONSETS = ("Nor", "Ta", "Ve", "Kor", "Lu", "Bri", "Sa", "Mo", "Ze", "Ar", "Fi", "Quo", "Del")
BRAND_CODAS = ("vik", "zelo", "ra", "dix", "mond", "tek", "lia", "no", "sto", "ven", "ka", "rex")

# short forms some platforms use in titles (each platform abbreviates at its own rate)
ABBREVIATIONS = {
    "black": "blk",
    "white": "wht",
    "navy blue": "navy",
    "olive green": "olive",
    "sky blue": "lt blue",
    "burgundy": "bordeaux",
    "charcoal": "anthracite",
    "stainless steel": "st. steel",
    "polyester": "poly",
    "aluminium": "alu",
    "organic cotton": "bio cotton",
    "recycled polyester": "rPET",
    "cast iron": "cast-iron",
    "t-shirt": "tee",
    "charging cable": "usb cable",
    "smartphone": "phone",
}

# filler words platforms put into titles (tagged O)
TITLE_FILLERS = ("New", "Official", "2026", "Free Shipping", "Hot Sale", "Original", "Genuine")

# ---------------------------------------------------------------- customer-service intents

# Slots: {type} product type, {brand}, {order} order number, {size}, {color}, {days}.
INTENTS: dict[str, tuple[str, ...]] = {
    "refund": (
        "i want my money back for the {type}",
        "please refund order {order}",
        "how long does a refund for the {brand} {type} take",
        "can i get a refund , the {type} arrived broken",
        "return the {type} and refund me please",
        "refund still not received for order {order}",
    ),
    "shipping_status": (
        "where is my order {order}",
        "my {type} has not arrived after {days} days",
        "when will the {brand} {type} be delivered",
        "tracking for order {order} has not updated",
        "is my package shipped yet",
        "the courier says delivered but no {type} here",
    ),
    "size_exchange": (
        "can i swap the {type} for size {size}",
        "the {type} is too small , i need a {size}",
        "exchange my {brand} {type} for a bigger size",
        "wrong size , please send {size} instead",
        "does the {type} run small , i ordered {size}",
    ),
    "invoice": (
        "please send me an invoice for order {order}",
        "i need a receipt with vat for the {type}",
        "the invoice for order {order} has the wrong address",
        "where can i download my bill",
        "company invoice needed for {brand} purchase",
    ),
    "complaint": (
        "the {type} is terrible quality",
        "very disappointed with the {brand} {type}",
        "your support never answers , this is unacceptable",
        "the {color} {type} looks nothing like the photos",
        "worst shopping experience , the {type} broke after {days} days",
    ),
    "cancel_order": (
        "please cancel order {order}",
        "i ordered the {type} by mistake , cancel it",
        "cancel my {brand} {type} before it ships",
        "how do i cancel an order",
    ),
    "payment_issue": (
        "my card was charged twice for order {order}",
        "payment failed for the {type}",
        "why was i charged for the {brand} {type} again",
        "paypal payment not going through",
    ),
    "product_question": (
        "is the {brand} {type} available in {color}",
        "what material is the {type} made of",
        "does the {type} come in size {size}",
        "is this {type} compatible with my phone",
        "how heavy is the {brand} {type}",
    ),
    "warranty": (
        "is the {brand} {type} covered by warranty",
        "my {type} stopped working after {days} days , warranty claim",
        "how long is the warranty on the {type}",
        "warranty repair for order {order}",
    ),
}

# ---------------------------------------------------------------- relation sentences

# Entities are marked in the sentence; {h} is the head, {t} the tail of the triple.
# Terse phrasings any relation (and ``none``) uses: only the entities tell them apart, and a
# ``none`` pair that happens to look related ("X with red") is genuinely ambiguous, so the task
# has irreducible error instead of being solved by the template alone.
AMBIGUOUS = ("{h} with {t}", "{h} : {t}", "{h} and {t}")
RELATIONS: dict[str, tuple[str, ...]] = {
    "hasBrand": (
        "{h} is made by {t}",
        "the {h} comes from the {t} lineup",
        "{t} released the {h} this season",
        "{h} , a product of {t}",
    ),
    "inCategory": (
        "{h} is listed under {t}",
        "find the {h} in our {t} department",
        "{h} belongs to the {t} range",
        "browse {t} for items like {h}",
    ),
    "hasColor": (
        "{h} comes in {t}",
        "the {t} version of {h} is back",
        "{h} is finished in {t}",
        "we love {h} in {t}",
    ),
    "madeOf": (
        "{h} is made of {t}",
        "{h} uses durable {t}",
        "the shell of {h} is {t}",
        "crafted from {t} , {h} lasts",
    ),
    "compatibleWith": (
        "{h} fits the {t}",
        "{h} works with {t}",
        "use {h} together with the {t}",
        "{h} is designed for {t}",
    ),
    "originCountry": (
        "{h} is a brand from {t}",
        "{h} was founded in {t}",
        "the {h} headquarters are in {t}",
        "{h} designs its products in {t}",
    ),
    "none": (
        "{h} and {t} were both in the newsletter",
        "customers viewed {h} and {t} today",
        "{h} was reviewed next to {t}",
        "compare {h} with {t} before buying",
    ),
}
