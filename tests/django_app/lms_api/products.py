"""~200 generated products, in memory: enough to paginate and to filter by name."""

ADJECTIVES = ["Advanced", "Applied", "Practical", "Modern", "Intro to", "Essential", "Deep", "Hands-on"]
SUBJECTS = ["Python", "Rust", "Django", "Databases", "Networking", "Statistics", "Design", "Security",
            "Algebra", "Chemistry", "History", "Writing", "Music", "Biology", "Physics",
            "Economics", "Marketing", "Photography", "Spanish", "Kubernetes", "Calculus",
            "Drawing", "Ethics", "Geology", "Linguistics"]

PRODUCTS = [
    {
        "id": i + 1,
        "name": f"{ADJECTIVES[i % len(ADJECTIVES)]} {SUBJECTS[i // len(ADJECTIVES) % len(SUBJECTS)]}",
        "price": f"{19 + (i * 7) % 80}.99",
    }
    for i in range(len(ADJECTIVES) * len(SUBJECTS))
]
