# An explicit model scope for API keys, and in-flight and token limits for keys and apps.

from django.db import migrations, models


def scope_from_allow_lists(apps, schema_editor):
    """Keys that listed no model meant "every model": say so in `all_models`; the others keep their list."""
    ApiKey = apps.get_model("registry", "ApiKey")
    ApiKey.objects.filter(allowed_models__isnull=True).update(all_models=True)


def allow_lists_only(apps, schema_editor):
    """Backwards: an all-models key becomes one with an empty list again, which meant every model."""
    ApiKey = apps.get_model("registry", "ApiKey")
    ApiKey.objects.filter(all_models=True).update(all_models=False)


class Migration(migrations.Migration):

    dependencies = [
        ('registry', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='all_models',
            field=models.BooleanField(default=False, help_text='Every model, present and future; otherwise only the models below.'),
        ),
        migrations.RunPython(scope_from_allow_lists, allow_lists_only),
        migrations.AddField(
            model_name='apikey',
            name='max_in_flight',
            field=models.PositiveIntegerField(blank=True, help_text='Requests this key may have running at once.', null=True),
        ),
        migrations.AddField(
            model_name='appcredential',
            name='max_in_flight',
            field=models.PositiveIntegerField(blank=True, help_text='Requests this app may have running at once.', null=True),
        ),
        migrations.AddField(
            model_name='appcredential',
            name='tokens_per_minute',
            field=models.PositiveIntegerField(blank=True, help_text='Reserved per request as prompt + max_tokens, settled after.', null=True),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='allowed_models',
            field=models.ManyToManyField(blank=True, help_text='The models this key may use when it is not for all models (none: no model).', related_name='api_keys', to='registry.servedmodel'),
        ),
        migrations.AlterField(
            model_name='apikey',
            name='tokens_per_minute',
            field=models.PositiveIntegerField(blank=True, help_text='Reserved per request as prompt + n × max_tokens, settled after.', null=True),
        ),
    ]
