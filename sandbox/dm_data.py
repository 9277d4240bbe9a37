"""Direct-message texts for the seeded inbox: what customers really send a brand.

Each text is tagged by the generator with the topic it was written for (support, sales,
spam, other), so routing can be scored against ground truth. The wording is deliberately
messy in places (no capitals, emoji, half-French half-English) because keyword routing
that only ever saw tidy sentences routes badly. Placeholders: ``{email}``, ``{invoice}``,
``{seats}``, ``{link}``.
"""

from __future__ import annotations

Bank = dict[str, dict[str, list[str]]]  # topic -> language -> texts

TOPIC_WEIGHTS: dict[str, int] = {"support": 40, "sales": 28, "spam": 14, "other": 18}
DM_LANGUAGE_WEIGHTS: dict[str, int] = {"en": 50, "fr": 35, "es": 8, "de": 7}

OPENERS: Bank = {
    "support": {
        "en": [
            "Hi, my invoice is wrong - I was charged twice this month ({invoice})",
            "the app crashes when I open the dashboard on Android 14 😩",
            "I can't log in since this morning, the password reset email never arrives",
            "Hello, is the workspace down? Getting error 502 on every page",
            "My CSV export has been stuck at 0% for 2 hours",
            "How do I cancel my subscription? Can't find it anywhere in settings",
            "Your last update broke SSO for our whole team!! please help",
            "I was billed for 12 seats but we only have 8 users. invoice {invoice}",
            "the app crashes when I upload a file bigger than 10MB",
            "Hey, I got locked out after enabling 2FA and lost my phone 😬",
        ],
        "fr": [
            "Bonjour, je n'arrive pas à me connecter depuis ce matin",
            "Ma facture est fausse, on m'a facturé deux fois ce mois-ci ({invoice})",
            "L'application plante dès que j'ouvre un projet 😤",
            "Impossible d'exporter mes données, le bouton ne fait rien",
            "Bonjour, mon abonnement a été renouvelé alors que je l'avais résilié",
            "je ne reçois pas l'e-mail de réinitialisation du mot de passe",
            "Depuis la mise à jour, la synchro ne marche plus du tout",
            "bonjour, erreur 500 quand j'essaie de payer ma facture {invoice}",
        ],
        "es": [
            "Hola, no puedo iniciar sesión en la app desde ayer",
            "Mi factura está mal, me cobraron dos veces ({invoice})",
            "La aplicación se cierra sola cuando abro un proyecto",
        ],
        "de": [
            "Hallo, ich kann mich seit gestern nicht mehr anmelden",
            "Die App stürzt beim Start ab, seit dem letzten Update",
            "Meine Rechnung {invoice} ist falsch, doppelt abgebucht",
        ],
    },
    "sales": {
        "en": [
            "how much is the pro plan?",
            "Can I get a demo? We're a team of {seats} evaluating tools",
            "Do you offer discounts for nonprofits?",
            "Hi! Is there an annual billing option for the Business plan?",
            "We want to move {seats} users over from another tool, who can I talk to?",
            "is SSO included in Pro or only in Enterprise?",
            "Hi, could you send me a quote for {seats} seats?",
        ],
        "fr": [
            "quel est le tarif pour 50 utilisateurs ?",
            "pouvez-vous m'envoyer un devis pour notre équipe ?",
            "Bonjour, proposez-vous une démo ? Nous sommes une PME de {seats} personnes",
            "Est-ce que vous avez une offre pour les associations ?",
            "Le plan Pro inclut-il le SSO ?",
            "Bonjour, combien coûte la licence entreprise pour {seats} postes ?",
        ],
        "es": [
            "¿Cuánto cuesta el plan Pro para {seats} usuarios?",
            "¿Podemos agendar una demo la semana que viene?",
        ],
        "de": [
            "Was kostet der Pro-Tarif für {seats} Nutzer?",
            "Können Sie mir ein Angebot schicken? Wir sind {seats} Leute",
        ],
    },
    "spam": {
        "en": [
            "earn $$$ fast click {link} 💰💰💰",
            "🚀 crypto giveaway! send 0.1 ETH and get 1 ETH back, only today {link}",
            "Boost your followers 10k in 24h!! DM for prices",
            "Congratulations! You won an iPhone 15, claim here: {link}",
            "Hello dear, I saw your profile, can we be friends? 🌹",
        ],
        "fr": [
            "Gagnez 500€ par jour depuis chez vous 👉 {link}",
            "Cadeau crypto 🎁 envoyez 0,05 BTC et recevez le double {link}",
        ],
        "es": ["Gana dinero rápido 💸 {link}"],
        "de": ["Schnell Geld verdienen 💶 {link}"],
    },
    "other": {
        "en": [
            "great service, thanks team 🙌",
            "Love the new dark mode!",
            "thanks for the quick fix yesterday",
            "are you hiring? I'd love to join Acme",
            "Just wanted to say your support team rocks ⭐⭐⭐⭐⭐",
        ],
        "fr": [
            "merci !",
            "Super service, merci à l'équipe 👏",
            "Bravo pour la nouvelle version 😍",
            "Vous recrutez des stagiaires cet été ?",
        ],
        "es": ["¡Gracias por la ayuda! 🙏"],
        "de": ["Danke, super Service!"],
    },
}

FOLLOW_UPS: Bank = {
    "support": {
        "en": [
            "Any update on this?",
            "My account email is {email} if that helps",
            "still broken after reinstalling 😕",
            "It's been 2 days and nobody answered...",
            "same problem again today",
            "We're paying customers, this is really urgent",
        ],
        "fr": [
            "Des nouvelles ?",
            "Mon e-mail de compte est {email}",
            "Toujours pas de réponse… c'est urgent",
            "Ça ne marche toujours pas après la mise à jour",
            "le problème est revenu ce matin",
        ],
        "es": ["¿Alguna novedad?", "Mi correo es {email}"],
        "de": ["Gibt es schon Neuigkeiten?", "Meine E-Mail ist {email}"],
    },
    "sales": {
        "en": [
            "my work email is {email}, feel free to send the pricing",
            "Could you also include the price for {seats} seats?",
            "We'd like to start next month if possible",
            "does the demo work on Thursday afternoon?",
        ],
        "fr": [
            "Vous pouvez me joindre à {email}",
            "Et en facturation annuelle, ça donne combien ?",
            "On aimerait démarrer le mois prochain",
        ],
        "es": ["Mi correo de trabajo es {email}"],
        "de": ["Sie erreichen mich unter {email}"],
    },
    "spam": {
        "en": ["last chance!!! {link}"],
        "fr": ["dernière chance !!! {link}"],
        "es": ["¡última oportunidad! {link}"],
        "de": ["letzte Chance!!! {link}"],
    },
    "other": {
        "en": ["thanks again!", "have a great weekend 😊"],
        "fr": ["merci encore !", "bonne journée 😊"],
        "es": ["¡gracias otra vez!"],
        "de": ["nochmals danke!"],
    },
}

# A customer who sends a picture: the text carries the t.co link of the media, as on X.
SCREENSHOT: dict[str, str] = {
    "en": "here's a screenshot of the error",
    "fr": "voici une capture d'écran",
    "es": "aquí va una captura",
    "de": "hier ein Screenshot",
}

# Support threads that end well: the last customer message is a thank-you (topic "other").
RESOLVED: dict[str, list[str]] = {
    "en": ["ok it works now, thanks!", "fixed, thank you 🙏"],
    "fr": ["c'est bon ça marche, merci !", "parfait, merci beaucoup 🙏"],
    "es": ["¡ya funciona, gracias!"],
    "de": ["jetzt klappt es, danke!"],
}

BRAND_REPLIES: Bank = {
    "support": {
        "en": [
            "Sorry about that! Could you share the email on your account so we can check?",
            "Thanks, we've passed this to our team and will get back to you shortly.",
            "This should be fixed now, can you try again and let us know?",
        ],
        "fr": [
            "Désolés pour ce souci ! Pouvez-vous nous indiquer l'e-mail de votre compte ?",
            "Merci, nous avons transmis à l'équipe et revenons vers vous rapidement.",
        ],
        "es": ["¡Lo sentimos! ¿Nos indicas el correo de tu cuenta?"],
        "de": ["Das tut uns leid! Können Sie uns Ihre Konto-E-Mail schicken?"],
    },
    "sales": {
        "en": [
            "Happy to help! Pro is $12/user/month. Want us to set up a demo?",
            "Our sales team will reach out with a quote, what's the best email?",
        ],
        "fr": [
            "Avec plaisir ! Le plan Pro est à 12 €/utilisateur/mois. Voulez-vous une démo ?",
            "Notre équipe commerciale va vous envoyer un devis, quelle est votre adresse ?",
        ],
        "es": ["¡Claro! Nuestro equipo comercial te escribirá hoy mismo."],
        "de": ["Gerne! Unser Vertrieb meldet sich heute noch bei Ihnen."],
    },
    "other": {
        "en": ["Thank you so much 💙", "That means a lot, thanks! 💙"],
        "fr": ["Merci beaucoup 💙"],
        "es": ["¡Muchas gracias! 💙"],
        "de": ["Vielen Dank! 💙"],
    },
}

SPAM_LINKS = ["bit.ly/3xFr33c", "bit.ly/gain-facile", "tinyurl.com/fr33-ph0ne", "bit.ly/c0in-x2"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.fr"]

# The one group conversation: a customer adds colleagues, then they ask about pricing.
GROUP_MESSAGES = [
    "Hi Acme, adding my colleagues from finance and IT here",
    "We'd need {seats} seats with SSO, what would that cost per year?",
    "And can you send the quote to {email}?",
    "Also: do you have a DPA we can sign?",
]

# Templates whose topic only shows in the thread around them ("any update?", an email
# address, a screenshot): a router that looks at one message at a time cannot place them.
# The ground truth flags them (``standalone: false``) so routing can be scored fairly.
NEEDS_CONTEXT: set[str] = {
    "Any update on this?",
    "My account email is {email} if that helps",
    "It's been 2 days and nobody answered...",
    "same problem again today",
    "We're paying customers, this is really urgent",
    "Des nouvelles ?",
    "Mon e-mail de compte est {email}",
    "Toujours pas de réponse… c'est urgent",
    "¿Alguna novedad?",
    "Mi correo es {email}",
    "Gibt es schon Neuigkeiten?",
    "Meine E-Mail ist {email}",
    "We'd like to start next month if possible",
    "Vous pouvez me joindre à {email}",
    "On aimerait démarrer le mois prochain",
    "Mi correo de trabajo es {email}",
    "Sie erreichen mich unter {email}",
    "Hi Acme, adding my colleagues from finance and IT here",
    "Also: do you have a DPA we can sign?",
    *SCREENSHOT.values(),
}
